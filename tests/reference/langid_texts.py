"""Hand-written everyday sentences of known language (not from the langid training catalogs)."""

KNOWN_TEXTS: dict[str, list[str]] = {
    "en": [
        "The weather is lovely today, let us go for a walk in the park.",
        "I would like to book a table for two people tomorrow evening.",
    ],
    "de": [
        "Das Wetter ist heute schön, lass uns im Park spazieren gehen.",
        "Ich möchte für morgen Abend einen Tisch für zwei Personen reservieren.",
    ],
    "fr": [
        "Il fait beau aujourd'hui, allons nous promener dans le parc.",
        "Je voudrais réserver une table pour deux personnes demain soir.",
    ],
    "es": [
        "Hace buen tiempo hoy, vamos a dar un paseo por el parque.",
        "Quisiera reservar una mesa para dos personas mañana por la noche.",
    ],
    "it": [
        "Oggi il tempo è bello, andiamo a fare una passeggiata nel parco.",
        "Vorrei prenotare un tavolo per due persone domani sera.",
    ],
    "pt": [
        "O tempo está ótimo hoje, vamos dar um passeio no parque.",
        "Eu gostaria de reservar uma mesa para duas pessoas amanhã à noite.",
    ],
    "nl": [
        "Het weer is vandaag heerlijk, laten we een wandeling maken in het park.",
        "Ik wil graag een tafel reserveren voor twee personen morgenavond.",
    ],
    "pl": [
        "Dzisiaj jest piękna pogoda, chodźmy na spacer do parku.",
        "Chciałbym zarezerwować stolik dla dwóch osób na jutro wieczorem.",
    ],
    "ru": [
        "Сегодня прекрасная погода, давай погуляем в парке.",
        "Я хотел бы забронировать столик на двоих на завтрашний вечер.",
    ],
    "uk": [
        "Сьогодні чудова погода, ходімо погуляємо в парку.",
        "Я хотів би забронювати столик на двох на завтрашній вечір.",
    ],
    "tr": [
        "Bugün hava çok güzel, hadi parkta yürüyüşe çıkalım.",
        "Yarın akşam için iki kişilik bir masa ayırtmak istiyorum.",
    ],
    "sv": [
        "Vädret är underbart idag, låt oss ta en promenad i parken.",
        "Jag skulle vilja boka ett bord för två personer i morgon kväll.",
    ],
    "fi": [
        "Tänään on kaunis sää, lähdetään kävelylle puistoon.",
        "Haluaisin varata pöydän kahdelle hengelle huomisillaksi.",
    ],
    "hu": [
        "Ma gyönyörű az idő, menjünk sétálni a parkba.",
        "Szeretnék asztalt foglalni két személyre holnap estére.",
    ],
    "cs": [
        "Dnes je krásné počasí, pojďme se projít do parku.",
        "Chtěl bych si rezervovat stůl pro dvě osoby na zítřejší večer.",
    ],
    "el": [
        "Ο καιρός είναι υπέροχος σήμερα, πάμε μια βόλτα στο πάρκο.",
        "Θα ήθελα να κλείσω ένα τραπέζι για δύο άτομα αύριο το βράδυ.",
    ],
    "ar": ["الطقس جميل اليوم، هيا نتمشى في الحديقة.", "أود حجز طاولة لشخصين مساء الغد."],
    "he": [
        "מזג האוויר נפלא היום, בוא נטייל בפארק.",
        "הייתי רוצה להזמין שולחן לשני אנשים מחר בערב.",
    ],
    "hi": [
        "आज मौसम बहुत अच्छा है, चलो पार्क में टहलने चलते हैं।",
        "मैं कल शाम दो लोगों के लिए एक मेज़ बुक करना चाहूँगा।",
    ],
    "ja": [
        "今日はとても良い天気なので、公園を散歩しましょう。",
        "明日の夜、二人で予約をお願いしたいのですが。",
    ],
    "zh": ["今天天气很好，我们去公园散步吧。", "我想预订明天晚上两个人的桌子。"],
    "ko": [
        "오늘 날씨가 정말 좋네요, 공원에 산책하러 가요.",
        "내일 저녁에 두 사람 자리를 예약하고 싶습니다.",
    ],
    "vi": [
        "Hôm nay trời đẹp quá, chúng ta đi dạo trong công viên nhé.",
        "Tôi muốn đặt một bàn cho hai người vào tối mai.",
    ],
    "id": [
        "Cuaca hari ini sangat cerah, ayo kita jalan-jalan ke taman.",
        "Saya ingin memesan meja untuk dua orang besok malam.",
    ],
    "ro": [
        "Vremea este frumoasă astăzi, hai să ne plimbăm prin parc.",
        "Aș dori să rezerv o masă pentru două persoane mâine seară.",
    ],
    "th": ["วันนี้อากาศดีมาก ไปเดินเล่นที่สวนสาธารณะกันเถอะ", "ฉันอยากจองโต๊ะสำหรับสองคนพรุ่งนี้ตอนเย็น"],
}
